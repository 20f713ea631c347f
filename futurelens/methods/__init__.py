"""The Future Lens methods, one module per method: each predicts the token N ahead of a prefix's last position."""
