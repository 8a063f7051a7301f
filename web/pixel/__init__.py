"""From a fetch of /p/<token>.gif to a stored event: the request, the recording, the spool."""
