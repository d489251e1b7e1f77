"""The interactive labs (ipywidgets): `drop` drives the drop filter's rules while traffic
runs, `nat` edits the NAT's mappings and shows its flow table live; both show `rateplot`,
a live plot of their ports' per-second rates (the numbers `labkit watch` prints), and share
`controls` (status lines, tables, background refreshes, what a widget does when its lab stops)."""
