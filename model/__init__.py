"""Networks, losses, metrics, the IP-Basic baseline and the teacher runtime."""
