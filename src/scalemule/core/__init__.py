"""Domain services. Plain async Python over a database connection; no surface imports."""
