"""Test support: real services (the local registry) and fault injection in front of them."""
