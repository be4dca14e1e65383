//! The nightly push (IF-09b) placeholder; filled in below.
