"""Tools beside the broker: the load generator (``bench``) and development certificates
(``certgen``)."""
