"""Feature dashboards: one self-contained HTML file per run (`saeexp-features RUN`)."""
