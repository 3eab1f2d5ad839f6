"""Backends: one file each, all implementing `vecq.engines.base.Engine`."""
