"""The pages people use: status pages, account settings, sign-in, the bookmarklet's page and
the privacy notice; their templates are in web/templates/."""
