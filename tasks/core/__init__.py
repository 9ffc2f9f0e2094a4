"""What every part of pawflow uses: params, errors, atomic file output, text escaping, stopping, status."""
