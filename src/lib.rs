pub mod crd;
pub mod replicate;
pub mod signature;
