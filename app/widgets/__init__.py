"""Streamlit pieces that several pages draw: ``ui`` (a chart with its caption and downloads, the
token strip, the text box, problems) and ``history`` (a training history with its circuits panel,
live on Train and saved for any run). Pages in ``app/views/`` compose them."""
