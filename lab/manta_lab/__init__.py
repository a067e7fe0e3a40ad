"""manta_lab: a miniature Manta on one machine (see docs/lab.md)."""
