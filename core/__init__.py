"""The bottom layer: settings, the message contract, time keys and the lake ledger; every
other package may import it, and it imports none of them."""
