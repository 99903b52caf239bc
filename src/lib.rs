pub mod crd;
pub mod signature;
