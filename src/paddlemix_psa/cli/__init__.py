"""The `paddlemix-psa` console command."""
