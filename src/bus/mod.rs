//! Buses: one task per bus owns its serial port or TCP endpoint and polls its meters one
//! transaction at a time, each meter on its own interval; meter health and offline backoff.
