"""Readers for the datasets metarec knows by name, and for any table through a column mapping."""
