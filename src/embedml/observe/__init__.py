"""The observe layer: prediction records, sinks and the observer that feeds them, metrics
and their exporters, drift and quality monitors. It receives records; it never imports the
handle."""
