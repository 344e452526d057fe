"""The gateway (DESIGN §7): S3- and OpenAI-compatible endpoints a Bridge Node serves in its
own process, acting with the credentials it holds; clients never get them."""
