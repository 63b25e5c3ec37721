"""IEEE 802.15.4 short addresses on a radio link: the edge's radio and client k's radio (one place)."""

EDGE_SHORT_ADDR = 0x0100


def client_short_addr(index: int) -> int:
    """Client ``index`` (0-based, in testbed order) sends from this address."""
    return 0x0001 + index
