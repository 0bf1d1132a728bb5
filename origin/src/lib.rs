//! allot's regional origin.
