"""Writeback: communication events in, notes and documents written to the PMS as each
practice's settings allow. See `target` for the contract between the engine and this package."""
