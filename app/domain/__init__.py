"""Pure decision functions, one module per stage; nothing here imports Faust."""
