pub mod crd;
pub mod emulator;
pub mod replicate;
pub mod signature;
