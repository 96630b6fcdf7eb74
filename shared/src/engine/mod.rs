//! The embedded engine: runs `infra/state-machine.asl.json` with state kept in SQLite.
