//! Lab (in progress).
