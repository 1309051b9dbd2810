print("hello from imagekit")
