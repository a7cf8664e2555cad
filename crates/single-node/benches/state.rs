//! Placeholder until the state benchmark lands.

fn main() {}
