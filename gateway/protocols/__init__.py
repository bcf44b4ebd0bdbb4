"""Agent UI protocols: mappings between the gateway's event vocabulary and AG-UI / the AI SDK UI message stream."""  # noqa: E501
