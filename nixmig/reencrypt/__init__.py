"""Column re-encryption: specs, schemes, key providers, the batch runner and its report.

Nothing here is imported by ``nixmig --help``: psycopg, cryptography and hvac are
imported inside the functions that use them.
"""
