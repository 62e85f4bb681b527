//! isthmus-node (in progress).
fn main() {}
