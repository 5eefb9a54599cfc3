"""``edgekit fit``: the search over pruning, format and precision (``search``) and its HTML
page (``report``)."""
