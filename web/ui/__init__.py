"""The pages people use: status pages, settings, sign-in, the bookmarklet's page, the privacy notice."""
