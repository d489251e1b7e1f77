"""The interactive labs (ipywidgets): `drop` drives the drop filter's rules while traffic
runs, `nat` edits the NAT's mappings and shows its flow table live."""
