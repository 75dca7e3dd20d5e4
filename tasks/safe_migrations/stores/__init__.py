"""Where backups are kept: what every backup shares (names, the private folder, the
file sink), the local folder and the S3 store behind one interface, and encryption."""
