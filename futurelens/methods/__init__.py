"""The Future Lens methods, one module per method: each predicts the token N ahead of a prefix's last position."""

PAPER_PROMPT = 'Hello! Could you please tell me more about "'
"""The paper's default fixed prompt: the state goes to its last token (the opening quote)."""
PAPER_PROMPTS = (
    PAPER_PROMPT,
    'The multi-tokens present here are "',
    "The concepts in this hidden state listed are: (",
    "<|endoftext|> This state is describing about the following concept:",
)
