"""Who fetched a pixel: the classifier and what it knows (user agents, networks, mail hosting)."""
