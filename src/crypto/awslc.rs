//! The `aws-lc` backend: aws-lc-rs.
