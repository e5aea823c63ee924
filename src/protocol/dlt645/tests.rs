//! Transport guarantees against the simulator (filled in below).
