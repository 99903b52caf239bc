pub mod crd;
pub mod signature;
pub mod webhook;
