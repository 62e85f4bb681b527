//! Cloud node library (in progress).
