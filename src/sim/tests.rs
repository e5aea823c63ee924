//! Simulator tests: raw frames on a real pty and on loopback TCP.
