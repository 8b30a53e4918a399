// vmshift dashboard
