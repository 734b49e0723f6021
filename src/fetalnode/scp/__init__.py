"""The data terminal: DICOM SCP (C-ECHO, C-STORE), spool and pre-notification."""
