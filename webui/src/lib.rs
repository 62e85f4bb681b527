//! Isthmus web console (in progress).
