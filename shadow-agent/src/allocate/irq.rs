//! NIC/IRQ locality (placeholder, filled below).
