"""IEEE 802.15.4 short addresses on a radio link: the edge's radio and client k's radio (one place).

Clients that share one medium must each send from their own address: the
edge's receiver keeps one message assembly per (source address, message id)
and the edge matches a chunk to its image by the same pair.
"""

EDGE_SHORT_ADDR = 0x0100
#: client indices 0..MAX_RADIO_CLIENTS-1 get 0x0001..0x00FF, below the edge's address
MAX_RADIO_CLIENTS = EDGE_SHORT_ADDR - 1


def client_short_addr(index: int) -> int:
    """Client ``index`` (0-based, in testbed order) sends from this address."""
    if not 0 <= index < MAX_RADIO_CLIENTS:
        raise ValueError(f"radio client index {index} out of range (0..{MAX_RADIO_CLIENTS - 1})")
    return 0x0001 + index
