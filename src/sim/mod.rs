//! The simulator: meters of the shipped models served over pseudo-terminals (one pty pair per
//! bus, with a link at a configured path) and over Modbus TCP, paced by the wire time of the
//! configured baud rate plus a meter turnaround, with energy that advances with a configured
//! load, and faults that can be switched on per meter. Tests, the demo and benchmarks use it.
