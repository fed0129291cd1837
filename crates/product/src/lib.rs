//! product
