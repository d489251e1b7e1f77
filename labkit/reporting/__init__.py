"""Reporting: `batch` runs notebooks headlessly with papermill (`batchfile`: batch.json),
`index` writes the page a reader opens first, `compare` sets runs side by side (each
experiment declares its own view), `plots` draws tables."""
