"""The web console's static files (served at /ui by app/api/routes/console.py)."""
