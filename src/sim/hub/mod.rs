//! The local Event Hub emulator (being built; see issue 6).
